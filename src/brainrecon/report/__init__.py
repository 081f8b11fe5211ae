"""brainrecon.report"""
