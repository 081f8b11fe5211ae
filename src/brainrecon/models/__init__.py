"""brainrecon.models"""
