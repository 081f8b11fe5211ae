"""brainrecon.synth"""
