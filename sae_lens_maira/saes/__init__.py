"""saes"""
