// This file exists so that the userspace crate can list this one as a build dependency, which
// makes cargo rebuild the userspace binary when the eBPF code changes.
#![no_std]
