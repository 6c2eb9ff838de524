"""autointerp"""
