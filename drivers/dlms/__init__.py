"""DLMS/COSEM (IEC 62056) smart meters: gridedge's own client, sans-IO codecs under thin transports.

Neither Python DLMS library may ship with an Apache-2.0 agent (gurux-dlms is GPL-2.0, dlms-cosem is under the
Business Source License), so the stack is gridedge's own. Modules, from the wire up:

    hdlc      HDLC frames (IEC 62056-46): addresses, CRC-16/X.25, segmentation, SNRM/UA negotiation, RR/RNR
    wrapper   the TCP wrapper (IEC 62056-47, port 4059)
    mbus      wired M-Bus long frames, as Austrian HAN ports push DLMS through them
    iec21     the IEC 62056-21 identification and 7E1 characters, for the mode E start-up of optical probes
    axdr      A-XDR encoding of the COSEM data types, date-time with deviation and clock status
    apdu      xDLMS APDUs: AARQ/AARE, GET/SET/ACTION, RLRQ/RLRE, exception responses, DataNotification
    security  security suite 0: AES-GCM-128 ciphering, HLS-GMAC, the persisted invocation counter
    cosem     interface classes 1, 3, 4, 5, 7, 8: OBIS codes, units, scalers, clock status, selective access
    obismap   OBIS -> gridedge point map files (drivers/maps/dlms_*.toml)
    client    the association: connect, authenticate, read, release (sans-IO state plus one async driver)
    transport serial HDLC (with the IEC 62056-21 mode E start-up), HDLC over TCP, the wrapper on TCP
    device    DlmsDevice: a meter on the bus scheduler; DlmsPushDevice: a HAN port that pushes

Every decoder raises only DlmsError subclasses (ValueError) on bad input; tests/test_dlms_fuzz.py holds them to it.
This package's __init__ imports nothing, so the rig can use the codecs without the transports.
"""
