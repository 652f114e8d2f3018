"""Drivers for real theatre equipment: profiles, parsing, transports, the device driver.

The gateway needs::

    from services.acquisition.devices import DeviceDriver, load_profile

    profile = load_profile("deploy/devices/terumo-cdi500.toml")
    driver = DeviceDriver(profile)
    async with contextlib.aclosing(driver.items()) as items:
        async for item in items:  # DeviceReading | DeviceStatus | BadLine | ClockJump
            ...

``docs/devices.md`` describes the profile format and how to connect each device.
"""

from services.acquisition.devices.driver import (
    BadLine,
    ClockJump,
    DeviceDriver,
    DeviceReading,
    DeviceStatus,
    DriverItem,
    DriverStats,
    State,
)
from services.acquisition.devices.parsing import LineError, LineParser, ParsedLine, parse_line
from services.acquisition.devices.profile import DeviceProfile, ProfileError, load_profile, parse_profile
from services.acquisition.devices.transports import (
    FileTransport,
    Frame,
    Framer,
    SerialTransport,
    TcpTransport,
    Transport,
    TransportError,
    make_transport,
)

__all__ = [
    "BadLine",
    "ClockJump",
    "DeviceDriver",
    "DeviceProfile",
    "DeviceReading",
    "DeviceStatus",
    "DriverItem",
    "DriverStats",
    "FileTransport",
    "Frame",
    "Framer",
    "LineError",
    "LineParser",
    "ParsedLine",
    "ProfileError",
    "SerialTransport",
    "State",
    "TcpTransport",
    "Transport",
    "TransportError",
    "load_profile",
    "make_transport",
    "parse_line",
    "parse_profile",
]
