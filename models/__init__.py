"""mvgpt.models"""
