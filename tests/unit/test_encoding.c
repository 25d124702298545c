/* Content negotiation (server/encoding.c) and CORS origins (server/cors.c). */
#include "server/arena.h"
#include "server/cors.h"
#include "server/encoding.h"
#include "tests/unit/check.h"

#include <string.h>
#include <zlib.h>

static void test_accept_encoding(void)
{
    CHECK(enc_accepts_gzip("gzip"));
    CHECK(enc_accepts_gzip("deflate, gzip;q=0.5, br"));
    CHECK(enc_accepts_gzip("GZIP"));
    CHECK(enc_accepts_gzip("*"));
    CHECK(!enc_accepts_gzip("gzip;q=0"));
    CHECK(!enc_accepts_gzip("gzip; q=0.0, *"));
    CHECK(!enc_accepts_gzip("*;q=0"));
    CHECK(!enc_accepts_gzip("br, deflate"));
    CHECK(!enc_accepts_gzip("identity"));
    CHECK(!enc_accepts_gzip("gzipx"));
    CHECK(!enc_accepts_gzip(""));
    CHECK(!enc_accepts_gzip(NULL));
}

static void test_compressible_types(void)
{
    CHECK(enc_compressible("application/json; charset=utf-8"));
    CHECK(enc_compressible("application/problem+json"));
    CHECK(enc_compressible("text/plain; version=0.0.4"));
    CHECK(!enc_compressible("image/png"));
    CHECK(!enc_compressible(NULL));
}

static void test_etag_matches(void)
{
    const char *etag = "\"0123456789abcdef0123456789abcdef\"";
    CHECK(enc_etag_matches(etag, etag));
    CHECK(enc_etag_matches("*", etag));
    CHECK(enc_etag_matches("W/\"0123456789abcdef0123456789abcdef\"", etag));
    CHECK(enc_etag_matches("\"x\", W/\"y\" ,\"0123456789abcdef0123456789abcdef\"", etag));
    CHECK(enc_etag_matches("\"0123456789abcdef0123456789abcdef-gzip\"", etag));
    CHECK(!enc_etag_matches("\"0123456789abcdef0123456789abcdef-gzi\"", etag));
    CHECK(!enc_etag_matches("\"0123456789abcdef0123456789abcdef-gzipx\"", etag));
    CHECK(!enc_etag_matches("\"x\", \"y\"", etag));
    CHECK(!enc_etag_matches("0123456789abcdef0123456789abcdef", etag));
    CHECK(!enc_etag_matches("\"0123456789abcdef0123456789abcde\"", etag));
    CHECK(!enc_etag_matches("\"0123456789abcdef0123456789abcdef", etag));
    CHECK(!enc_etag_matches("", etag));
    CHECK(!enc_etag_matches(NULL, etag));
}

static void test_gzip_round_trip(void)
{
    struct arena *a = arena_new();
    char body[4096];
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = "{\"orders\":12,}"[i % 14];
    size_t len = 0;
    char *gz = enc_gzip(a, body, sizeof(body), &len);
    CHECK(gz && len > 18 && len < sizeof(body) / 4);
    CHECK((unsigned char)gz[0] == 0x1f && (unsigned char)gz[1] == 0x8b);
    char back[4096];
    uLongf back_len = sizeof(back);
    z_stream z = {0};
    inflateInit2(&z, 15 + 16);
    z.next_in = (Bytef *)gz;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)back;
    z.avail_out = (uInt)back_len;
    CHECK_INT(inflate(&z, Z_FINISH), Z_STREAM_END);
    CHECK_INT(z.total_out, sizeof(body));
    CHECK(memcmp(back, body, sizeof(body)) == 0);
    inflateEnd(&z);
    CHECK_STR(enc_gzip_etag(a, "\"abc\""), "\"abc-gzip\"");
    arena_free(a);
}

static void test_cors_origins(void)
{
    char err[256];
    struct cors *c = NULL;
    CHECK(cors_new("https://dash.example.com, http://localhost:3000", &c, err, sizeof(err)));
    CHECK(c != NULL);
    CHECK(cors_allows(c, "https://dash.example.com"));
    CHECK(cors_allows(c, "http://localhost:3000"));
    CHECK(!cors_allows(c, "https://dash.example.com.evil.net"));
    CHECK(!cors_allows(c, "http://dash.example.com"));
    CHECK(!cors_allows(c, "null"));
    CHECK(!cors_allows(c, NULL));
    cors_free(c);
    CHECK(cors_new("*", &c, err, sizeof(err)) && cors_allows(c, "https://any.example"));
    cors_free(c);
    CHECK(cors_new("", &c, err, sizeof(err)) && c == NULL && !cors_allows(c, "https://a.b"));
    CHECK(!cors_new("https://a.example/path", &c, err, sizeof(err)));
    CHECK(!cors_new("ftp://a.example", &c, err, sizeof(err)));
    CHECK(!cors_new("dash.example.com", &c, err, sizeof(err)));
}

int main(void)
{
    TEST(test_accept_encoding);
    TEST(test_compressible_types);
    TEST(test_etag_matches);
    TEST(test_gzip_round_trip);
    TEST(test_cors_origins);
    return check_done();
}
