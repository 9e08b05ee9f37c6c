"""Janus-Pro batch text-to-image generation."""
