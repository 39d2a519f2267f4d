"""Training from scratch and fine-tuning on corrections, with the loop both share."""
