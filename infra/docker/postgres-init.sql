-- The databases of the shared set-up besides MLflow's (POSTGRES_DB): kaizen's ingestion ledger and Prefect's.
-- Run once by the postgres image on an empty volume; the user and its password come from its environment.
CREATE DATABASE ledger;
CREATE DATABASE prefect;
