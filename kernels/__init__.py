"""mvgpt.kernels"""
