"""Figures: learning curves, dusted images, decision boundaries."""
