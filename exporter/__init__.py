"""mvgpt.exporter"""
