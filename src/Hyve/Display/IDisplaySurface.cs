// SPDX-License-Identifier: BSD-2-Clause

namespace Hyve.Display;

/// <summary>What the VNC server reads a picture from: a mode and the memory it describes (the standard VGA, or a test's array).</summary>
public interface IDisplaySurface
{
    /// <summary>The scan-out now.</summary>
    DisplayMode Mode { get; }

    /// <summary>Changes whenever the mode may have changed.</summary>
    int ModeGeneration { get; }

    /// <summary>The framebuffer memory the mode's offsets index.</summary>
    ReadOnlySpan<byte> Memory { get; }

    /// <summary>The 256-entry palette (0x00RRGGBB) of 8-bit modes.</summary>
    void CopyPalette(Span<uint> palette);

    /// <summary>Which pages of <see cref="Memory"/> the guest wrote (null: unknown, so every line is compared). The
    /// surface pokes it when the mode or palette changes, so a reader sleeping on it wakes.</summary>
    Hyve.Vmm.DirtyLog? Dirty => null;

    /// <summary>Draws what the surface renders itself (VGA text) into <see cref="Memory"/>; true when that changed.
    /// Called at the start of every look.</summary>
    bool Prepare() => false;

    /// <summary>True while the picture comes from memory the dirty log does not watch (VGA text in system memory), so
    /// a reader must keep looking.</summary>
    bool Polled => false;
}
