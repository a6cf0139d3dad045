# Reads include/xhttp.h and writes, for every function returning xh_result, the set of
# result codes its comment's "Returns ..." paragraph names, as a bit mask:
#   #define DOC_xh_tunnel_read (XH_DOC_BIT(XH_RESULT_OK) | ...)
# The C harness checks every code a call returns against it, so the header's lists and
# the library's behaviour cannot drift apart unnoticed.
/^\/\// {
    line = $0
    if (line ~ /^\/\/ *$/) { inlist = 0 }
    if (line ~ /Returns /) { inlist = 1 }
    if (inlist) { para = para " " line }
    next
}
/^xh_result xh_[a-z_]+\(/ {
    name = $2
    sub(/\(.*/, "", name)
    mask = ""
    seen_codes = ""
    rest = para
    while (match(rest, /XH_RESULT_[A-Z_]+/)) {
        code = substr(rest, RSTART, RLENGTH)
        rest = substr(rest, RSTART + RLENGTH)
        if (index(seen_codes, " " code " ")) continue
        seen_codes = seen_codes " " code " "
        mask = mask (mask == "" ? "" : " | ") "XH_DOC_BIT(" code ")"
    }
    if (mask == "") { print "documented.awk: no Returns list for " name > "/dev/stderr"; bad = 1 }
    printf "#define DOC_%s (%s)\n", name, mask
    para = ""; inlist = 0
    next
}
{ para = ""; inlist = 0 }
END { exit bad }
