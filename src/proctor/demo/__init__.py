"""The demo: realistic tools and the six scenarios of DESIGN section 2.

The tools here are also the starter catalog that ``proctor init`` writes, so a new instance
has something to govern on day one.
"""
