/*
 * A PKCS#11 module for the outage tests: it forwards every call to a real module
 * (KMS_HSM_FAULT_REAL_MODULE, e.g. SoftHSM2) and, while the file named by
 * KMS_HSM_FAULT_FILE exists, answers every call except the clean-up ones with the
 * CK_RV written in that file (hex, e.g. "0x32" = CKR_DEVICE_REMOVED), or, when the file
 * says "hang", holds every such call until the file is removed (a token that stops
 * answering), then forwards it.
 *
 * It needs no PKCS#11 header: every PKCS#11 v2.40 function returns CK_RV (unsigned
 * long) and takes only integers and pointers, so one forwarding wrapper per slot of the
 * function list, declared with eight such arguments, passes any call through unchanged
 * (x86-64 and aarch64 calling conventions; unused arguments are ignored by the callee).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOTS 68
typedef unsigned long rv_t;
typedef unsigned long arg_t;
typedef rv_t (*fn_t)(arg_t, arg_t, arg_t, arg_t, arg_t, arg_t, arg_t, arg_t);

struct function_list {
    unsigned char version[2];
    fn_t fn[SLOTS];
};

static struct function_list *real;
static struct function_list shim;

/* Slots that always pass: C_Finalize(1), C_GetFunctionList(3), C_CloseSession(13),
 * C_CloseAllSessions(14), C_Logout(19): clean-up must work even during an outage. */
static int passes(int slot) {
    return slot == 1 || slot == 3 || slot == 13 || slot == 14 || slot == 19;
}

static rv_t fault(void) {
    const char *path = getenv("KMS_HSM_FAULT_FILE");
    struct stat st;
    if (path == NULL || stat(path, &st) != 0) return 0;
    FILE *f = fopen(path, "r");
    unsigned long code = 0x32; /* CKR_DEVICE_REMOVED */
    char word[16] = {0};
    if (f != NULL) {
        if (fscanf(f, "%15s", word) == 1 && strcmp(word, "hang") == 0) {
            fclose(f);
            while (stat(path, &st) == 0) usleep(10000);
            return 0;
        }
        code = strtoul(word, NULL, 16);
        fclose(f);
    }
    return code ? code : 0x32;
}

static int load(void) {
    if (real != NULL) return 1;
    const char *path = getenv("KMS_HSM_FAULT_REAL_MODULE");
    if (path == NULL) path = "/usr/lib/softhsm/libsofthsm2.so";
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) return 0;
    rv_t (*get)(struct function_list **) = (rv_t (*)(struct function_list **))dlsym(handle, "C_GetFunctionList");
    if (get == NULL || get(&real) != 0) return 0;
    return 1;
}

#define WRAP(n)                                                                        \
    static rv_t wrap_##n(arg_t a, arg_t b, arg_t c, arg_t d, arg_t e, arg_t f, arg_t g, \
                         arg_t h) {                                                    \
        if (!passes(n)) {                                                              \
            rv_t rv = fault();                                                         \
            if (rv) return rv;                                                         \
        }                                                                              \
        return real->fn[n](a, b, c, d, e, f, g, h);                                    \
    }
WRAP(0) WRAP(1) WRAP(2) WRAP(3) WRAP(4) WRAP(5) WRAP(6) WRAP(7)
WRAP(8) WRAP(9) WRAP(10) WRAP(11) WRAP(12) WRAP(13) WRAP(14) WRAP(15)
WRAP(16) WRAP(17) WRAP(18) WRAP(19) WRAP(20) WRAP(21) WRAP(22) WRAP(23)
WRAP(24) WRAP(25) WRAP(26) WRAP(27) WRAP(28) WRAP(29) WRAP(30) WRAP(31)
WRAP(32) WRAP(33) WRAP(34) WRAP(35) WRAP(36) WRAP(37) WRAP(38) WRAP(39)
WRAP(40) WRAP(41) WRAP(42) WRAP(43) WRAP(44) WRAP(45) WRAP(46) WRAP(47)
WRAP(48) WRAP(49) WRAP(50) WRAP(51) WRAP(52) WRAP(53) WRAP(54) WRAP(55)
WRAP(56) WRAP(57) WRAP(58) WRAP(59) WRAP(60) WRAP(61) WRAP(62) WRAP(63)
WRAP(64) WRAP(65) WRAP(66) WRAP(67)

static const fn_t wrappers[SLOTS] = {
    wrap_0, wrap_1, wrap_2, wrap_3, wrap_4, wrap_5, wrap_6, wrap_7, wrap_8, wrap_9,
    wrap_10, wrap_11, wrap_12, wrap_13, wrap_14, wrap_15, wrap_16, wrap_17, wrap_18, wrap_19,
    wrap_20, wrap_21, wrap_22, wrap_23, wrap_24, wrap_25, wrap_26, wrap_27, wrap_28, wrap_29,
    wrap_30, wrap_31, wrap_32, wrap_33, wrap_34, wrap_35, wrap_36, wrap_37, wrap_38, wrap_39,
    wrap_40, wrap_41, wrap_42, wrap_43, wrap_44, wrap_45, wrap_46, wrap_47, wrap_48, wrap_49,
    wrap_50, wrap_51, wrap_52, wrap_53, wrap_54, wrap_55, wrap_56, wrap_57, wrap_58, wrap_59,
    wrap_60, wrap_61, wrap_62, wrap_63, wrap_64, wrap_65, wrap_66, wrap_67,
};

rv_t C_GetFunctionList(struct function_list **out) {
    if (!load()) return 0x5; /* CKR_GENERAL_ERROR */
    memcpy(shim.version, real->version, 2);
    for (int i = 0; i < SLOTS; i++) shim.fn[i] = wrappers[i];
    /* C_GetFunctionList itself is not forwarded through the shim table. */
    shim.fn[3] = (fn_t)C_GetFunctionList;
    *out = &shim;
    return 0;
}

rv_t C_Initialize(void *args) {
    if (!load()) return 0x5;
    return wrappers[0]((arg_t)args, 0, 0, 0, 0, 0, 0, 0);
}

rv_t C_Finalize(void *reserved) {
    if (!load()) return 0x5;
    return real->fn[1]((arg_t)reserved, 0, 0, 0, 0, 0, 0, 0);
}
