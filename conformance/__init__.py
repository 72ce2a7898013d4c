"""ocpd conformance suite and vectors"""
