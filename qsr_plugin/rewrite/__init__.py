"""The model rewriter: analysis, body detection, depth switching, layer replacement."""
