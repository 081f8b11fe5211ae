"""brainrecon.features"""
