"""Pose toolkit: keypoint formats, skeleton rendering, heatmaps and masks, OKS, estimators."""
