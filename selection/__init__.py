"""Selection stage: MidRanking band and IR-DRO weights over scores/ (not implemented yet: see issue 3)."""
