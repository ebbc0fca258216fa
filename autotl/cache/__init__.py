"""The activation cache: cutting a model at a block, storing what its frozen part computes, and feeding each phase from it."""
