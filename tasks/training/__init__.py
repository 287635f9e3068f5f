"""Fine-tuning the challenger: the training job, where it runs, and merging it with the champion."""
