#!/bin/sh
# Writes the broker's password file from the environment (.env), once per start of the
# stack, before the broker starts: one user per service, per theatre gateway, and staff tools.
set -eu
out=${MOSQUITTO_PASSWD_FILE:-/mosquitto/auth/passwd}
umask 077
: > "$out"
add() { mosquitto_passwd -b "$out" "$1" "$2"; }
add recorder "$MQTT_RECORDER_PASSWORD"
add leakage "$MQTT_LEAKAGE_PASSWORD"
add alerts "$MQTT_ALERTS_PASSWORD"
add pk "$MQTT_PK_PASSWORD"
add gateway-theatre-1 "$MQTT_GATEWAY_THEATRE_1_PASSWORD"
add operator "$MQTT_OPERATOR_PASSWORD"
chown mosquitto:mosquitto "$out" 2>/dev/null || true
echo "wrote $out"
