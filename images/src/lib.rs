//! OCI image store (see issue: image store).
