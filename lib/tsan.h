/*
 * tsan.h - ThreadSanitizer annotations for Concurrency Kit's inline-asm atomics.
 *
 * TSan cannot see ck_pr's inline assembly, so the happens-before edges ck provides are
 * declared to it by hand. The macros vanish unless the build has -fsanitize=thread.
 */
#ifndef SHARDMAP_TSAN_H
#define SHARDMAP_TSAN_H

#if defined(__SANITIZE_THREAD__)
#define SHARDMAP__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHARDMAP__TSAN 1
#endif
#endif

#ifdef SHARDMAP__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define SHARDMAP__TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define SHARDMAP__TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define SHARDMAP__TSAN_ACQUIRE(p) ((void)0)
#define SHARDMAP__TSAN_RELEASE(p) ((void)0)
#endif

#endif
