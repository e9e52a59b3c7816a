"""Training: one loop for every stage, checkpoints that resume bit for bit, diffusers exports."""
