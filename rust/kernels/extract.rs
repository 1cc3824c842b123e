//! Patch extraction: the patches themselves, strided and sampled, in conv-weight order.
