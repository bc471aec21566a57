"""Offline apps: generate, harmonize a file, render, fine-tune."""
