//! stacko: images, instances, stackpoints.
