#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = LOG_INFO;
static _Thread_local const char *current_request_id;
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    atomic_store(&min_level, (int)level);
}

bool log_parse_level(const char *s, enum log_level *out)
{
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return true;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return true;
    }
    return false;
}

bool log_enabled(enum log_level level)
{
    return (int)level >= atomic_load(&min_level);
}

void log_set_request_id(const char *request_id)
{
    current_request_id = request_id;
}

static void format_now(char *out, size_t size)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void write_line(const char *line, size_t len)
{
    pthread_mutex_lock(&write_lock);
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, line, len);
        if (n <= 0)
            break;
        line += n;
        len -= (size_t)n;
    }
    pthread_mutex_unlock(&write_lock);
}

void log_json(enum log_level level, json_t *obj)
{
    if (!log_enabled(level)) {
        json_decref(obj);
        return;
    }
    char ts[40];
    format_now(ts, sizeof(ts));
    json_t *line = json_pack("{s:s, s:s}", "ts", ts, "level", level_names[level]);
    json_object_update(line, obj);
    json_decref(obj);
    char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(line);
    if (!text)
        return;
    size_t len = strlen(text);
    text[len] = '\n';
    write_line(text, len + 1);
    free(text);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *obj = json_object();
    json_object_set_new(obj, "msg", json_string(msg));
    if (!json_is_string(json_object_get(obj, "msg")))
        json_object_set_new(obj, "msg", json_string("(message not valid UTF-8)"));
    if (current_request_id)
        json_object_set_new(obj, "request_id", json_string(current_request_id));
    log_json(level, obj);
}
