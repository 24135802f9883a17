// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;

namespace Hyve.Pci;

/// <summary>One <c>-s [bus:]slot[:func],emulation[,conf]</c> entry: config keys pci.BUS.SLOT.FUNC.*.</summary>
public sealed record PciSlotConfig(int Bus, int Slot, int Function, string Emulation, IReadOnlyDictionary<string, string> Conf);

/// <summary>What a device factory gets: where the function goes, its emulation name and its conf keys.</summary>
public sealed record PciDeviceContext(PciBus Bus, int BusNumber, int Slot, int Function, string Emulation, IReadOnlyDictionary<string, string> Conf)
{
    /// <summary>The function's address as bhyve prints it.</summary>
    public string Where => $"pci.{BusNumber}.{Slot}.{Function}";

    /// <summary>A numeric conf key (decimal or 0x-hex) that must fit 16 bits, or <paramref name="fallback"/> when absent.</summary>
    public ushort GetU16(string key, ushort fallback)
    {
        if (!Conf.TryGetValue(key, out var s)) return fallback;
        if (TryParse(s, out ulong v) && v <= 0xffff) return (ushort)v;
        throw new HostConfigException($"{Where}.{key}: '{s}' is not a 16-bit number");
    }

    private static bool TryParse(string s, out ulong v)
    {
        s = s.Trim();
        if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            return ulong.TryParse(s.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out v);
        return ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out v);
    }
}

/// <summary>Creates a PCI function for a context; throws <see cref="HostConfigException"/> on bad configuration.</summary>
public delegate PciDevice PciDeviceFactory(PciDeviceContext context);

/// <summary>The table of PCI emulations by name (bhyve's pci_devemu linker set).</summary>
public sealed class PciDeviceRegistry
{
    private readonly Dictionary<string, PciDeviceFactory> _factories = new(StringComparer.Ordinal);

    /// <summary>A registry holding this area's emulations: hostbridge, amd_hostbridge, lpc, piix4-pm and fbuf.</summary>
    public static PciDeviceRegistry CreateDefault()
    {
        var r = new PciDeviceRegistry();
        r.Register("hostbridge", HostBridge.Create);
        r.Register("amd_hostbridge", HostBridge.CreateAmd);
        r.Register("lpc", LpcBridge.Create);
        r.Register("piix4-pm", Piix4Pm.Create);
        r.Register("fbuf", Hyve.Display.StdVga.Create);
        return r;
    }

    /// <summary>Adds or replaces an emulation.</summary>
    public void Register(string name, PciDeviceFactory factory)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        _factories[name] = factory ?? throw new ArgumentNullException(nameof(factory));
    }

    /// <summary>True when <paramref name="name"/> is known.</summary>
    public bool Contains(string name) => _factories.ContainsKey(name);

    /// <summary>Known emulation names.</summary>
    public IEnumerable<string> Names => _factories.Keys;

    /// <summary>Creates the function; an unknown emulation is a host error.</summary>
    public PciDevice Create(PciDeviceContext context)
    {
        if (!_factories.TryGetValue(context.Emulation, out var f))
            throw new HostConfigException($"{context.Where}: unknown PCI emulation '{context.Emulation}'");
        return f(context);
    }
}
