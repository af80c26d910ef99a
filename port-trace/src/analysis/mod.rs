//! Pure analysis of port-allocation patterns.
