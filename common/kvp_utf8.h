/*
 * kvp_utf8.h - UTF-8 as clients send it in names (adapters, salts): is it well formed,
 * and is it printable. Pure functions, any thread, no allocation.
 */
#ifndef KVP_UTF8_H
#define KVP_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length (1..4) of the well-formed UTF-8 sequence at s, n > 0 bytes left, or 0 when it
 * is not one (overlong, a surrogate, above U+10FFFF, cut short, a stray byte). */
size_t kvp_utf8_seq(const unsigned char *s, size_t n);
/* Printable UTF-8: well formed, and no C0 or C1 control character (nor DEL). */
bool kvp_utf8_printable(const char *s, size_t n);

#endif
