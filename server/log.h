/* log.h - JSON log lines on stdout, tagged with the current request (pgbouncer's slog_*). */
#ifndef CANGREJO_LOG_H
#define CANGREJO_LOG_H

#include <jansson.h>
#include <stdbool.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the lowest level written. */
void log_set_level(enum log_level level);
/* Parses "debug|info|warn|error"; false when unknown. */
bool log_parse_level(const char *s, enum log_level *out);
/* True when lines of this level are written. */
bool log_enabled(enum log_level level);
/* Tags this thread's following lines with a request id (NULL clears it). */
void log_set_request_id(const char *request_id);
/* Writes one line {"ts","level","msg","request_id"?}; never pass secrets or PII. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes obj as one line, adding "ts" and "level"; takes ownership of obj. */
void log_json(enum log_level level, json_t *obj);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
