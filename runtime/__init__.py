"""mvgpt.runtime"""
