"""Evaluation: metrics as functions (OKS, LPIPS, CLIP score, FID/KID, bootstrap intervals)."""
