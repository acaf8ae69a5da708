/*
 * emiot - export.h: symbol visibility for the public API.
 *
 * libemiot is built with hidden visibility; only functions marked EM_EXPORT
 * are part of the shared library's ABI.
 */
#ifndef EMIOT_EXPORT_H
#define EMIOT_EXPORT_H

#if defined(EM_BUILDING_LIBRARY) && defined(__GNUC__)
#define EM_EXPORT __attribute__((visibility("default")))
#else
#define EM_EXPORT
#endif

#if defined(__GNUC__)
#define EM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define EM_PRINTF(fmt, args)
#endif

#endif /* EMIOT_EXPORT_H */
