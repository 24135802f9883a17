// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using Hyve.Vmm;

namespace Hyve.Devices;

/// <summary>
/// QEMU's isa-debug-exit: a write of value V to any of its ports ends hyve with exit status (V &lt;&lt; 1) | 1,
/// so a test guest can report pass or fail (the status is always odd; value 0 gives 1, the same as "powered off").
/// Reads return 0.
/// hyve's defaults are iobase 0xf4 and iosize 4 (`-l debug-exit[,iobase=N][,iosize=N]`), the values most test
/// kernels use with QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`; QEMU's own defaults are 0x501 and 2.
/// The status is the full (V &lt;&lt; 1) | 1; the operating system keeps only its low 8 bits as a process exit status.
/// </summary>
public sealed class DebugExit : IPortDevice
{
    /// <summary>Default first port.</summary>
    public const ushort DefaultIoBase = 0xf4;
    /// <summary>Default number of ports.</summary>
    public const int DefaultIoSize = 4;

    private readonly Action<int> _exit;

    /// <summary>Creates the device; <paramref name="exit"/> is called (on the vCPU thread) with the exit status the VM should end with.</summary>
    public DebugExit(Action<int> exit, ushort ioBase = DefaultIoBase, int ioSize = DefaultIoSize)
    {
        if (ioSize is < 1 or > 256 || ioBase + ioSize > 0x10000)
            throw new HostConfigException($"debug-exit: ports 0x{ioBase:x}+{ioSize} are out of range");
        _exit = exit;
        IoBase = ioBase;
        IoSize = ioSize;
    }

    /// <summary>First port.</summary>
    public ushort IoBase { get; }
    /// <summary>Number of ports.</summary>
    public int IoSize { get; }

    /// <summary>Claims the ports on <paramref name="bus"/>.</summary>
    public void Register(PortBus bus) => bus.Register(IoBase, IoSize, this);

    /// <summary>
    /// Parses the options after `debug-exit` in `-l debug-exit,iobase=0xf4,iosize=4` (null or empty for the defaults);
    /// numbers are decimal or 0x-prefixed hex. A bad option is a <see cref="HostConfigException"/>.
    /// </summary>
    public static (ushort IoBase, int IoSize) ParseOptions(string? options)
    {
        ushort ioBase = DefaultIoBase;
        int ioSize = DefaultIoSize;
        if (string.IsNullOrEmpty(options)) return (ioBase, ioSize);
        foreach (var opt in options.Split(','))
        {
            int eq = opt.IndexOf('=');
            string key = eq < 0 ? opt : opt[..eq];
            string val = eq < 0 ? "" : opt[(eq + 1)..];
            switch (key)
            {
                case "iobase":
                    ioBase = (ushort)ParseNumber(key, val, 0xffff);
                    break;
                case "iosize":
                    ioSize = (int)ParseNumber(key, val, 256);
                    if (ioSize == 0) throw new HostConfigException("debug-exit: iosize must be at least 1");
                    break;
                default:
                    throw new HostConfigException($"debug-exit: unknown option '{opt}' (iobase=N, iosize=N)");
            }
        }
        if (ioBase + ioSize > 0x10000) throw new HostConfigException($"debug-exit: ports 0x{ioBase:x}+{ioSize} pass 0xffff");
        return (ioBase, ioSize);
    }

    private static uint ParseNumber(string key, string text, uint max)
    {
        bool ok = text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? uint.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint v)
            : uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out v);
        if (!ok || v > max) throw new HostConfigException($"debug-exit: {key}={text} is not a number from 0 to {max}");
        return v;
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size) => 0;

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        // QEMU computes (val << 1) | 1 in 64 bits and hands it to exit(); keep the int the caller can report.
        _exit((int)((value << 1) | 1));
    }
}
