//! hull microVM library.
