#!/bin/sh
# Writes the broker's password file from the environment (.env), once per start of the
# stack, before the broker starts: one user per service and the two roles of people's tools.
# Theatre gateways log in by their client certificate instead (mosquitto.conf, listener 8884).
set -eu
out=${MOSQUITTO_PASSWD_FILE:-/mosquitto/auth/passwd}
umask 077
: > "$out"
add() { mosquitto_passwd -b "$out" "$1" "$2"; }
add recorder "$MQTT_RECORDER_PASSWORD"
add leakage "$MQTT_LEAKAGE_PASSWORD"
add alerts "$MQTT_ALERTS_PASSWORD"
add pk "$MQTT_PK_PASSWORD"
add operator "$MQTT_OPERATOR_PASSWORD"
add viewer "$MQTT_VIEWER_PASSWORD"
chown mosquitto:mosquitto "$out" 2>/dev/null || true
echo "wrote $out"
