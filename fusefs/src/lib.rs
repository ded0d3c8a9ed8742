//! stacko merged filesystem (see issue 3).
