#pragma once
// SQUISH_SANITIZED is defined in a build under AddressSanitizer or ThreadSanitizer: GCC says so
// with __SANITIZE_*__, clang with __has_feature.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SQUISH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SQUISH_SANITIZED 1
#endif
#endif
