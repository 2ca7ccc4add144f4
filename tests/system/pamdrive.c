/*
 * pamdrive: a small PAM application for the system tests.
 *
 *   gcc -O2 -Wall -o pamdrive pamdrive.c -lpam
 *
 *   pamdrive [--rhost H] [--tty T] [--ruser U] [--authtok PW] [--loop N]
 *            [--quiet] [--rss] [--time] SERVICE USER [ANSWER...]
 *
 * It runs pam_start(SERVICE, USER) / pam_authenticate(0) / pam_end and prints
 * one line per conversation message on stdout:
 *
 *   PROMPT_ECHO_ON <text>     PROMPT_ECHO_OFF <text>
 *   TEXT_INFO <text>          ERROR_MSG <text>
 *
 * then "RESULT <code> <pam_strerror text>". Message text is escaped so that
 * one message is one line: newline -> \n, backslash -> \\, any other byte
 * below 0x20 and 0x7f -> \xNN. Prompts are answered with the ANSWERs in
 * order; the answer "@EOF", or running out of answers, makes the
 * conversation return PAM_CONV_ERR for that call.
 *
 * --loop N repeats start/authenticate/end N times in this process (answers
 * start from the first one each time), with a RESULT line per iteration;
 * --quiet prints only the RESULT lines. The exit status is the last PAM code.
 *
 * --rss prints "RSS <iteration> <VmRSS kB> <VmHWM kB>" (from /proc/self/status)
 * after the first and after the last iteration, for memory-growth tests.
 * --time prints "TIME <iteration> <seconds>" after each RESULT line: how long
 * pam_authenticate() took (monotonic clock), without the process start-up.
 *
 * --authtok: libpam refuses PAM_AUTHTOK from an application
 * (PAM_BAD_ITEM), so when pam_set_item() refuses it right after pam_start,
 * it is set at the start of the first conversation call instead, when a
 * module is the caller. Modules that read PAM_AUTHTOK before they talk to
 * the user do not see it in that case.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <security/pam_appl.h>

static char **answers;
static int n_answers;
static int next_answer;
static int quiet;
static int print_rss;
static int print_time;
static long iteration_no;
static const char *authtok;
static int authtok_pending;
static pam_handle_t *current_pamh;

static void usage(void)
{
    fprintf(stderr,
            "usage: pamdrive [--rhost H] [--tty T] [--ruser U] [--authtok PW]"
            " [--loop N] [--quiet] [--rss] [--time] SERVICE USER [ANSWER...]\n");
    exit(2);
}

static void print_escaped(const char *label, const char *text)
{
    const unsigned char *p;

    fputs(label, stdout);
    fputc(' ', stdout);
    if (text != NULL) {
        for (p = (const unsigned char *)text; *p != '\0'; p++) {
            if (*p == '\n')
                fputs("\\n", stdout);
            else if (*p == '\\')
                fputs("\\\\", stdout);
            else if (*p < 0x20 || *p == 0x7f)
                printf("\\x%02x", *p);
            else
                fputc(*p, stdout);
        }
    }
    fputc('\n', stdout);
    fflush(stdout);
}

static void free_responses(struct pam_response *resp, int n)
{
    int i;

    if (resp == NULL)
        return;
    for (i = 0; i < n; i++) {
        if (resp[i].resp != NULL) {
            memset(resp[i].resp, 0, strlen(resp[i].resp));
            free(resp[i].resp);
        }
    }
    free(resp);
}

static int conversation(int num_msg, const struct pam_message **msg,
                        struct pam_response **resp_out, void *appdata)
{
    struct pam_response *resp;
    int i;

    (void)appdata;
    *resp_out = NULL;

    if (authtok_pending && current_pamh != NULL) {
        /* Called from inside a module: libpam now accepts PAM_AUTHTOK. */
        if (pam_set_item(current_pamh, PAM_AUTHTOK, authtok) == PAM_SUCCESS)
            authtok_pending = 0;
    }

    if (num_msg <= 0 || num_msg > PAM_MAX_NUM_MSG)
        return PAM_CONV_ERR;
    resp = calloc((size_t)num_msg, sizeof(*resp));
    if (resp == NULL)
        return PAM_BUF_ERR;

    for (i = 0; i < num_msg; i++) {
        const struct pam_message *m = msg[i];
        const char *label;
        int is_prompt = 0;

        switch (m->msg_style) {
        case PAM_PROMPT_ECHO_ON:
            label = "PROMPT_ECHO_ON";
            is_prompt = 1;
            break;
        case PAM_PROMPT_ECHO_OFF:
            label = "PROMPT_ECHO_OFF";
            is_prompt = 1;
            break;
        case PAM_TEXT_INFO:
            label = "TEXT_INFO";
            break;
        case PAM_ERROR_MSG:
            label = "ERROR_MSG";
            break;
        default:
            if (!quiet) {
                printf("UNKNOWN_STYLE %d\n", m->msg_style);
                fflush(stdout);
            }
            free_responses(resp, num_msg);
            return PAM_CONV_ERR;
        }
        if (!quiet)
            print_escaped(label, m->msg);
        if (is_prompt) {
            const char *answer;

            if (next_answer >= n_answers) {
                free_responses(resp, num_msg);
                return PAM_CONV_ERR;
            }
            answer = answers[next_answer++];
            if (strcmp(answer, "@EOF") == 0) {
                free_responses(resp, num_msg);
                return PAM_CONV_ERR;
            }
            resp[i].resp = strdup(answer);
            if (resp[i].resp == NULL) {
                free_responses(resp, num_msg);
                return PAM_BUF_ERR;
            }
        }
        resp[i].resp_retcode = 0;
    }
    *resp_out = resp;
    return PAM_SUCCESS;
}

/* "RSS <iteration> <VmRSS kB> <VmHWM kB>" from /proc/self/status. */
static void report_rss(long iteration)
{
    char line[256];
    long rss = -1, hwm = -1;
    FILE *f = fopen("/proc/self/status", "r");

    if (f != NULL) {
        while (fgets(line, sizeof(line), f) != NULL) {
            if (strncmp(line, "VmRSS:", 6) == 0)
                rss = strtol(line + 6, NULL, 10);
            else if (strncmp(line, "VmHWM:", 6) == 0)
                hwm = strtol(line + 6, NULL, 10);
        }
        fclose(f);
    }
    printf("RSS %ld %ld %ld\n", iteration, rss, hwm);
    fflush(stdout);
}

static int set_item(pam_handle_t *pamh, int item, const char *value,
                    const char *name)
{
    int rc;

    if (value == NULL)
        return PAM_SUCCESS;
    rc = pam_set_item(pamh, item, value);
    if (rc != PAM_SUCCESS)
        fprintf(stderr, "pamdrive: pam_set_item(%s): %s\n", name,
                pam_strerror(pamh, rc));
    return rc;
}

static int run_once(const char *service, const char *user, const char *rhost,
                    const char *tty, const char *ruser)
{
    struct pam_conv conv = { conversation, NULL };
    pam_handle_t *pamh = NULL;
    struct timespec t0 = { 0, 0 }, t1 = { 0, 0 };
    int rc;

    iteration_no++;
    next_answer = 0;
    authtok_pending = 0;
    rc = pam_start(service, user, &conv, &pamh);
    if (rc != PAM_SUCCESS) {
        printf("RESULT %d %s\n", rc, pam_strerror(pamh, rc));
        fflush(stdout);
        if (pamh != NULL)
            pam_end(pamh, rc);
        return rc;
    }
    current_pamh = pamh;
    if ((rc = set_item(pamh, PAM_RHOST, rhost, "PAM_RHOST")) != PAM_SUCCESS ||
        (rc = set_item(pamh, PAM_TTY, tty, "PAM_TTY")) != PAM_SUCCESS ||
        (rc = set_item(pamh, PAM_RUSER, ruser, "PAM_RUSER")) != PAM_SUCCESS)
        goto done;
    if (authtok != NULL) {
        rc = pam_set_item(pamh, PAM_AUTHTOK, authtok);
        if (rc == PAM_BAD_ITEM)
            authtok_pending = 1;   /* set from the conversation instead */
        else if (rc != PAM_SUCCESS)
            goto done;
    }

    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = pam_authenticate(pamh, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);

done:
    printf("RESULT %d %s\n", rc, pam_strerror(pamh, rc));
    if (print_time)
        printf("TIME %ld %.6f\n", iteration_no,
               (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    fflush(stdout);
    pam_end(pamh, rc);
    current_pamh = NULL;
    return rc;
}

int main(int argc, char **argv)
{
    const char *rhost = NULL, *tty = NULL, *ruser = NULL;
    const char *service, *user;
    long loops = 1, i;
    int argi = 1, rc = PAM_SYSTEM_ERR;

    while (argi < argc && strncmp(argv[argi], "--", 2) == 0) {
        const char *opt = argv[argi];

        if (strcmp(opt, "--") == 0) {
            argi++;
            break;
        } else if (strcmp(opt, "--quiet") == 0) {
            quiet = 1;
            argi++;
            continue;
        } else if (strcmp(opt, "--rss") == 0) {
            print_rss = 1;
            argi++;
            continue;
        } else if (strcmp(opt, "--time") == 0) {
            print_time = 1;
            argi++;
            continue;
        }
        if (argi + 1 >= argc)
            usage();
        if (strcmp(opt, "--rhost") == 0)
            rhost = argv[argi + 1];
        else if (strcmp(opt, "--tty") == 0)
            tty = argv[argi + 1];
        else if (strcmp(opt, "--ruser") == 0)
            ruser = argv[argi + 1];
        else if (strcmp(opt, "--authtok") == 0)
            authtok = argv[argi + 1];
        else if (strcmp(opt, "--loop") == 0) {
            char *end;

            errno = 0;
            loops = strtol(argv[argi + 1], &end, 10);
            if (errno != 0 || *end != '\0' || loops < 1 || loops > INT_MAX)
                usage();
        } else
            usage();
        argi += 2;
    }
    if (argc - argi < 2)
        usage();
    service = argv[argi];
    user = argv[argi + 1];
    answers = argv + argi + 2;
    n_answers = argc - argi - 2;

    for (i = 0; i < loops; i++) {
        rc = run_once(service, user, rhost, tty, ruser);
        if (print_rss && (i == 0 || i == loops - 1))
            report_rss(i + 1);
    }
    return rc;
}
