"""brainrecon.encoding"""
