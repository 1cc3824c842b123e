//! Parallel decoding of image files (PNG, JPEG, BMP) into uint8 arrays.
