"""brainrecon.evaluate"""
