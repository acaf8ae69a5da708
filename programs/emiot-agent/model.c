/*
 * emiot-agent - model.c: how a simulated device behaves.
 *
 * The model is deliberately plain physics: a device draws a power that varies
 * around a per-device base (a slow cycle plus noise), its energy meter
 * integrates that power over time (so energy_wh only ever grows, by power x
 * elapsed time), the mains voltage wanders around 230 V, the current follows
 * from power / voltage, and a battery drains at a rate that depends on the
 * power mode. The battery level in turn decides the power mode. Every random
 * draw comes from the device's own generator, so a seed reproduces a fleet.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

#define MS_PER_HOUR   3600000.0
#define LOAD_CYCLE_MS 3600000.0 /* period of the slow load variation */

uint64_t agent_rng_next(agent_rng_t *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double agent_rng_uniform(agent_rng_t *r)
{
    /* 53 random bits make every double in [0, 1) equally spaced. */
    return (double)(agent_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

double agent_rng_normal(agent_rng_t *r)
{
    /* Box-Muller; u1 is kept away from 0 so log() stays finite. */
    double u1 = agent_rng_uniform(r);
    double u2 = agent_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static double between(agent_rng_t *r, double lo, double hi)
{
    return lo + (hi - lo) * agent_rng_uniform(r);
}

/* Per type: range of the base power (W), battery drain in normal mode (%/h),
 * and the temperature the device runs at (cameras and gateways run warm). */
static void type_profile(em_device_type_t type, double *pmin, double *pmax, double *drain,
                         double *temp)
{
    switch (type) {
    case EM_DEVICE_SENSOR:
        *pmin = 0.2, *pmax = 1.5, *drain = 0.5, *temp = 21.0;
        break;
    case EM_DEVICE_CAMERA:
        *pmin = 3.0, *pmax = 8.0, *drain = 3.0, *temp = 32.0;
        break;
    case EM_DEVICE_ACTUATOR:
        *pmin = 5.0, *pmax = 60.0, *drain = 1.0, *temp = 26.0;
        break;
    case EM_DEVICE_GATEWAY:
        *pmin = 4.0, *pmax = 10.0, *drain = 1.5, *temp = 35.0;
        break;
    case EM_DEVICE_GENERIC:
    default:
        *pmin = 1.0, *pmax = 20.0, *drain = 1.0, *temp = 24.0;
        break;
    }
}

/* How much of its base power, and of its battery drain, a device uses in each
 * mode. Critical is a survival mode: radio mostly off, sensors sampled rarely. */
static double mode_power_factor(em_power_mode_t mode)
{
    switch (mode) {
    case EM_POWER_LOW_POWER:
        return 0.6;
    case EM_POWER_SLEEP:
        return 0.08;
    case EM_POWER_CRITICAL:
        return 0.3;
    default:
        return 1.0;
    }
}

static double mode_drain_factor(em_power_mode_t mode)
{
    switch (mode) {
    case EM_POWER_LOW_POWER:
        return 0.4;
    case EM_POWER_SLEEP:
        return 0.1;
    case EM_POWER_CRITICAL:
        return 0.05;
    default:
        return 1.0;
    }
}

static void set_firmware(agent_model_t *m, const char *fw)
{
    snprintf(m->firmware, sizeof m->firmware, "%s", fw ? fw : AGENT_FIRMWARE_DEFAULT);
}

void agent_model_init(agent_model_t *m, em_device_type_t type, uint64_t seed, const char *firmware,
                      int64_t now_ms)
{
    double pmin, pmax, drain, temp;

    memset(m, 0, sizeof *m);
    m->type = type;
    m->rng.state = seed;
    /* Scramble once so that neighbouring seeds (seed + index) diverge at once. */
    (void)agent_rng_next(&m->rng);

    type_profile(type, &pmin, &pmax, &drain, &temp);
    m->base_power_w = between(&m->rng, pmin, pmax);
    m->drain_pct_h = drain * between(&m->rng, 0.8, 1.2);
    m->phase = between(&m->rng, 0.0, 2.0 * M_PI);
    m->signal_base = (int)lround(between(&m->rng, -95.0, -45.0));
    m->temp_base = temp + between(&m->rng, -2.0, 2.0);
    m->humidity_base = between(&m->rng, 30.0, 60.0);

    /* Most of a fleet is healthy; one device in five starts with a weak
     * battery, so that low_power and critical show up in a demo. */
    if (agent_rng_uniform(&m->rng) < 0.8)
        m->battery = between(&m->rng, 40.0, 100.0);
    else
        m->battery = between(&m->rng, 5.0, 40.0);
    /* A meter that has been running for a while: up to ~3 months at base load. */
    m->energy_wh = m->base_power_w * between(&m->rng, 0.0, 2000.0);

    m->load = 1.0;
    m->voltage_v = 230.0;
    m->temperature = m->temp_base;
    m->humidity = m->humidity_base;
    m->signal_dbm = m->signal_base;
    m->last_advance_ms = now_ms;
    m->boot_ms = now_ms;
    m->sleep_threshold = AGENT_SLEEP_THRESHOLD_DEFAULT;
    m->security_level = AGENT_SECURITY_LEVEL_DEFAULT;
    m->auto_wake = true;
    set_firmware(m, firmware);
    agent_model_sample(m, now_ms);
}

em_power_mode_t agent_model_power_mode(const agent_model_t *m)
{
    if (m->battery < AGENT_BATTERY_CRITICAL)
        return EM_POWER_CRITICAL;
    if (m->sleeping)
        return EM_POWER_SLEEP;
    if (m->battery < m->sleep_threshold)
        return EM_POWER_LOW_POWER;
    return EM_POWER_NORMAL;
}

double agent_model_power(const agent_model_t *m)
{
    return m->base_power_w * mode_power_factor(agent_model_power_mode(m)) * m->load;
}

bool agent_model_advance(agent_model_t *m, int64_t now_ms)
{
    em_power_mode_t before = agent_model_power_mode(m);

    if (now_ms > m->last_advance_ms) {
        double dt_h = (double)(now_ms - m->last_advance_ms) / MS_PER_HOUR;
        m->energy_wh += agent_model_power(m) * dt_h;
        m->battery -= m->drain_pct_h * mode_drain_factor(before) * dt_h;
        if (m->battery < 0.0)
            m->battery = 0.0;
        m->last_advance_ms = now_ms;
    }
    if (m->sleeping && m->sleep_until_ms != 0 && now_ms >= m->sleep_until_ms) {
        /* A timed sleep is over. Without autoWake the device stays asleep
         * until a wake command arrives. */
        m->sleep_until_ms = 0;
        if (m->auto_wake)
            m->sleeping = false;
    }
    return agent_model_power_mode(m) != before;
}

void agent_model_sample(agent_model_t *m, int64_t now_ms)
{
    double cycle = sin(2.0 * M_PI * fmod((double)now_ms, LOAD_CYCLE_MS) / LOAD_CYCLE_MS + m->phase);

    m->load = clampd((1.0 + 0.15 * cycle) * (1.0 + 0.03 * agent_rng_normal(&m->rng)), 0.0, 2.0);
    /* Mean-reverting random walks: values wander but stay plausible. */
    m->voltage_v =
        clampd(230.0 + 0.7 * (m->voltage_v - 230.0) + agent_rng_normal(&m->rng), 207.0, 253.0);
    m->temperature = clampd(m->temperature + 0.1 * (m->temp_base - m->temperature) +
                                0.15 * agent_rng_normal(&m->rng),
                            -50.0, 100.0);
    m->humidity = clampd(m->humidity + 0.1 * (m->humidity_base - m->humidity) +
                             0.5 * agent_rng_normal(&m->rng),
                         0.0, 100.0);
    m->signal_dbm =
        (int)lround(clampd((double)m->signal_base + 3.0 * agent_rng_normal(&m->rng), -150.0, 0.0));
}

/* Rounds to `decimals` places. Dividing by an exact power of ten yields the
 * double nearest to the decimal, which prints back as that short decimal. */
static double round_to(double v, int decimals)
{
    static const double pow10[] = {1.0, 10.0, 100.0, 1000.0, 10000.0};
    double p = pow10[decimals];
    return round(v * p) / p;
}

void agent_model_telemetry(const agent_model_t *m, int64_t wall_ms, em_telemetry_t *t)
{
    double power = agent_model_power(m);

    memset(t, 0, sizeof *t);
    t->has = EM_TELEMETRY_HAS_POWER | EM_TELEMETRY_HAS_ENERGY | EM_TELEMETRY_HAS_VOLTAGE |
             EM_TELEMETRY_HAS_CURRENT | EM_TELEMETRY_HAS_TEMPERATURE | EM_TELEMETRY_HAS_HUMIDITY |
             EM_TELEMETRY_HAS_BATTERY;
    t->timestamp_ms = wall_ms;
    /* Rounding is monotonic, so the rounded energy counter still never
     * decreases between samples. */
    t->power_w = round_to(power, 3);
    t->energy_wh = round_to(m->energy_wh, 3);
    t->voltage_v = round_to(m->voltage_v, 1);
    t->current_a = round_to(power / m->voltage_v, 4);
    t->temperature = round_to(m->temperature, 1);
    t->humidity = round_to(m->humidity, 1);
    t->battery = (uint8_t)clampd(floor(m->battery), 0.0, 100.0);
}

void agent_model_reboot(agent_model_t *m, int64_t now_ms)
{
    m->sleeping = false;
    m->sleep_until_ms = 0;
    m->boot_ms = now_ms;
}

void agent_model_factory_reset(agent_model_t *m, int64_t now_ms)
{
    /* Configuration back to defaults and the meter zeroed; the battery and the
     * installed firmware are hardware facts a reset does not change. */
    agent_model_advance(m, now_ms);
    m->energy_wh = 0.0;
    m->sleep_threshold = AGENT_SLEEP_THRESHOLD_DEFAULT;
    m->security_level = AGENT_SECURITY_LEVEL_DEFAULT;
    m->auto_wake = true;
    agent_model_reboot(m, now_ms);
}

/* Splits "1.2.3" into at most 8 numbers of at most 9 digits each. */
static bool parse_dotted(const char *v, unsigned long *parts, size_t *n)
{
    size_t count = 0;
    const char *p = v;

    if (*p == '\0')
        return false;
    for (;;) {
        unsigned long num = 0;
        size_t digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (++digits > 9)
                return false;
            num = num * 10 + (unsigned long)(*p - '0');
            p++;
        }
        if (digits == 0 || count == 8)
            return false;
        parts[count++] = num;
        if (*p == '\0')
            break;
        if (*p != '.')
            return false;
        p++;
    }
    *n = count;
    return true;
}

int agent_version_compare(const char *a, const char *b, bool *comparable)
{
    unsigned long pa[8], pb[8];
    size_t na, nb;

    *comparable = parse_dotted(a, pa, &na) && parse_dotted(b, pb, &nb);
    if (!*comparable)
        return 0;
    for (size_t i = 0; i < na || i < nb; i++) {
        unsigned long x = i < na ? pa[i] : 0;
        unsigned long y = i < nb ? pb[i] : 0;
        if (x != y)
            return x < y ? -1 : 1;
    }
    return 0;
}

bool agent_version_bump(const char *v, char *out, size_t size)
{
    unsigned long parts[8];
    size_t n;
    int len;

    if (!parse_dotted(v, parts, &n)) {
        /* Not dotted digits ("1.2.3-beta"): a suffix still orders after it. */
        len = snprintf(out, size, "%s.1", v);
        return len > 0 && (size_t)len < size;
    }
    parts[n - 1]++;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        len = snprintf(out + used, size - used, i ? ".%lu" : "%lu", parts[i]);
        if (len < 0 || (size_t)len >= size - used)
            return false;
        used += (size_t)len;
    }
    return true;
}
