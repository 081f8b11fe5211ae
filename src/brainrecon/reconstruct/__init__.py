"""brainrecon.reconstruct"""
