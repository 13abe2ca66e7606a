#!/usr/bin/env bash
# C build workload: a parallel `make -j2` of N small C files, each including
# common system headers (the way a build server opens files: thousands of
# header opens per second, relative paths, many short-lived cc1/as
# processes).
#   build.sh setup DIR [N=100]   write the project (untimed)
#   build.sh run DIR             clean, then time the build; prints "ops=N ns=T"
set -euo pipefail
cmd=$1 dir=$2
case $cmd in
setup)
    n=${3:-100}
    rm -rf "$dir"
    mkdir -p "$dir"
    for i in $(seq 1 "$n"); do
        cat >"$dir/f$i.c" <<C
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <pthread.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
int f$i(int x) { char b[32]; snprintf(b, sizeof b, "%d", x); return (int)strlen(b) + (int)sqrt((double)x); }
C
    done
    {
        echo "OBJS := \$(patsubst %.c,%.o,\$(wildcard *.c))"
        echo "all: \$(OBJS)"
        echo "%.o: %.c"
        printf '\tcc -O1 -c -o $@ $<\n'
        echo "clean:"
        printf '\trm -f *.o\n'
    } >"$dir/Makefile"
    ;;
run)
    make -s -C "$dir" clean
    n=$(find "$dir" -name '*.c' | wc -l)
    t0=$(date +%s%N)
    make -s -j2 -C "$dir" all
    t1=$(date +%s%N)
    echo "ops=$n ns=$((t1 - t0))"
    ;;
*) echo "usage: $0 setup|run DIR [N]" >&2; exit 2 ;;
esac
