"""brainrecon.regression"""
